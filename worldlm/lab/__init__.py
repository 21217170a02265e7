"""The lab: the simulator and what stands on it (demo, experiment, methods, reports, studies).
Never imports a broker."""
