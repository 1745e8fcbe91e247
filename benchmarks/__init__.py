"""The benchmark scripts (run each as ``python benchmarks/<script>.py``); ``common`` holds what they share."""
