"""The job engine: events, their projection, getting jobs to workers and running them. It knows no flow and no record."""
