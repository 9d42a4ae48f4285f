"""Running planned runs: process trees under deadlines, the output folder, virtual hosts, assembling summary.json."""
