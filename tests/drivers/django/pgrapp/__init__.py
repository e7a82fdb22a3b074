"""The Django app of the driver checks: its models live in pgrapp/models.py."""
