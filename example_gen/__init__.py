"""ExampleGen: raw logs to raw tf.Example TFRecords with Apache Beam.

`formats` parses one raw line into tf.Example parts or raises `reasons.Malformed`; `lines`
reads files as numbered lines in parallel byte ranges; `beam_pipeline` joins, deduplicates,
splits, writes, and accounts for every line.
"""

FORMATS = ("aliccp-raw", "aliccp-csv", "aliexpress")
