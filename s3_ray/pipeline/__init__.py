"""Multi-stage runs of the jobs, top to bottom: the demo loop, and the baseline split over Ray tasks."""
