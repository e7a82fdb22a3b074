"""Models of the Django driver checks. Table names carry the run's prefix (settings.PGR_PREFIX,
pgr_django_<pid>), so runs may overlap; checks.py creates and drops the tables with the schema
editor (no migrations)."""
from django.conf import settings
from django.db import models

P = settings.PGR_PREFIX


class Item(models.Model):
    """Rows of every check, told apart by `kind` (the check) and `client`."""
    kind = models.CharField(max_length=20)
    client = models.IntegerField()
    i = models.IntegerField()
    v = models.TextField(default="")

    class Meta:
        app_label = "pgrapp"
        db_table = f"{P}_item"
        unique_together = [("kind", "client", "i")]


class Account(models.Model):
    name = models.CharField(max_length=40, unique=True)
    balance = models.IntegerField(default=0)

    class Meta:
        app_label = "pgrapp"
        db_table = f"{P}_account"


class Blob(models.Model):
    data = models.TextField()

    class Meta:
        app_label = "pgrapp"
        db_table = f"{P}_blob"
