"""Photo to verdict: calibration of decision thresholds (more of the verifier moves here)."""
