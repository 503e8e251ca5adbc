"""The job list filtered to failures (and its capped count) reads a partial index of failed and lost jobs."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0008_lock'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='job',
            index=models.Index(condition=models.Q(('status__in', ['failed', 'lost'])), fields=['-queued_at', '-id'],
                               include=['status'], name='jobs_job_failed_idx'),
        ),
    ]
