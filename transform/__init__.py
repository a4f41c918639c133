"""Transform stage: tf.Transform preprocessing; owns the feature schema (`transform.features`)."""
