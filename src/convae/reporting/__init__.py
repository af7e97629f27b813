"""What a run tells the people watching it: the log and metrics sinks (log.txt, metrics.jsonl, steps.jsonl,
TensorBoard), and the HTML report built from the run folder alone."""
