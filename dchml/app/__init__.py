"""The applications on top of the library: the `dchml` command line (`cli`, with its parser in
`arguments` and its commands in `train_commands` and `model_commands`), a run's outputs
(`experiment`), the report (`report`) and raw-input pipelines for encode (`raw_inputs`)."""
