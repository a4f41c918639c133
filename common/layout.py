"""The artifact layout: the folders and files each stage writes under its output folder. Stages
find each other's output by these names only."""

SPLITS = ("train", "eval", "test")
RECORDS = "*.tfrecord.gz"  # every split folder's files (gzip TFRecord)

# ExampleGen: examples/{split}/, rejected/, stats.json
EXAMPLES = "examples"
REJECTED = "rejected"
STATS = "stats.json"  # also Transform's, under transformed/
# Transform: transform_graph/ (TFTransformOutput), transformed/{split}/
TRANSFORM_GRAPH = "transform_graph"
TRANSFORMED = "transformed"
# Evaluator: evaluation/metrics.json and evaluation/BLESSED or NOT_BLESSED
EVALUATION = "evaluation"
METRICS = "metrics.json"
BLESSED, NOT_BLESSED = "BLESSED", "NOT_BLESSED"
# Trainer: model/ (checkpoints, logs, metrics.json, config.json), model/serving/ (the SavedModel)
MODEL = "model"
SERVING = "serving"
# The linear reference (the `logistic` model) the Evaluator prints beside the model: reference/model/...
REFERENCE = "reference"
