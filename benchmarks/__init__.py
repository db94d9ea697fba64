"""The benchmark harness: train, evaluate, sample and compare the three GPTs."""
