"""What a spec is and how it becomes a DAG: the typed model, training and orchestration
profiles, validation (with its cache) and expansion into dag-factory configs."""
