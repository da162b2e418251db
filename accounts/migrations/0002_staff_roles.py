"""Data migration: the staff roles, as Django groups with least privilege.

- ``support``: sees payments (masked in the admin), their timelines and users;
  cancels payments through the admin action, which is gated on ``change_payment``
  (every Payment field is read-only in the admin, so that permission edits nothing).
- ``operations``: manages the beat schedules (django-celery-beat periodic tasks,
  intervals, crontabs) and sees payments.
- ``auditor``: reads the audit trail (``audit.AuditEvent``, django-auditlog's
  ``LogEntry``) and payment timelines; nothing else.

Staff also need ``is_staff`` to reach the admin, and a TOTP device
(``manage.py add_staff_totp``). Self-contained on purpose: a migration must not
change when application code does. Re-running it resets each role's permissions
to exactly these.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

ROLES = {
    "support": [
        ("payments", "view_payment"),
        ("payments", "change_payment"),
        ("payments", "view_paymentevent"),
        ("accounts", "view_user"),
    ],
    "operations": [
        ("django_celery_beat", "add_periodictask"),
        ("django_celery_beat", "change_periodictask"),
        ("django_celery_beat", "view_periodictask"),
        ("django_celery_beat", "add_intervalschedule"),
        ("django_celery_beat", "change_intervalschedule"),
        ("django_celery_beat", "view_intervalschedule"),
        ("django_celery_beat", "add_crontabschedule"),
        ("django_celery_beat", "change_crontabschedule"),
        ("django_celery_beat", "view_crontabschedule"),
        ("payments", "view_payment"),
    ],
    "auditor": [
        ("audit", "view_auditevent"),
        ("auditlog", "view_logentry"),
        ("payments", "view_paymentevent"),
    ],
}


def create_roles(apps, schema_editor):
    # Permissions are normally created after *all* migrations (post_migrate); on a fresh
    # database they do not exist yet, so create those of the apps the roles refer to now.
    using = schema_editor.connection.alias
    for label in sorted({app_label for grants in ROLES.values() for app_label, _ in grants}):
        app_config = apps.get_app_config(label)
        app_config.models_module = True
        create_permissions(app_config, verbosity=0, using=using, apps=apps)
        app_config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, grants in ROLES.items():
        permissions = []
        for app_label, codename in grants:
            permissions.append(
                Permission.objects.using(using).get(content_type__app_label=app_label, codename=codename)
            )
        group, _ = Group.objects.using(using).get_or_create(name=name)
        group.permissions.set(permissions)


def delete_roles(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Group.objects.using(schema_editor.connection.alias).filter(name__in=list(ROLES)).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("payments", "0001_initial"),
        ("audit", "0001_initial"),
        ("auditlog", "0001_initial"),
        ("django_celery_beat", "0001_initial"),
    ]

    operations = [migrations.RunPython(create_roles, delete_roles)]
