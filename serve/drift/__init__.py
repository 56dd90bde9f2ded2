"""The drift measures and their no-drift calibration: pure numpy, shared by `serve baseline` (which
stores the calibration table) and the monitor (which judges with it). Below both, so neither
imports the other."""
