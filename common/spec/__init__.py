"""What is trained, framework-free: the config, model specs, datasets and sample order, initial weights, schedules,
the frameworks' semantics, stage splits."""
