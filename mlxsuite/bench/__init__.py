"""`bench ttft`: the schedule, the modes and the report."""
