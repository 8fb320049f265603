"""What drives the emulators: the demo, the stack of processes, a login without a browser, and the
benchmarks."""
