"""The command line (`mtrank`): the top floor, which composes the pipeline, the stages and the experiments."""
