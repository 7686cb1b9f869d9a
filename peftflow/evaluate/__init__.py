"""evaluate_adapter: merge an adapter into its base model, score both on eval suites, judge."""
