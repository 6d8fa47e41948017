"""Foundation shared by every stage: user errors, configuration from dataclasses, runtime facts
(device, dtype, peak FLOPs, machine), atomic files, signals and logging. Imports nothing else of
`dmas_repro`."""
