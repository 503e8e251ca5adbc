"""The records' admin pages that start no job. The pages whose actions and edits start jobs (server groups,
nodes, apps, releases, locations, backups, cron entries) are registered by jobs/records_admin.py: the
records layer imports nothing of jobs."""

from django import forms
from django.contrib import admin

from nodeops import validate
from toppcloud_site.records.models import AuditEntry, Certificate, ConfigValue, Location, Service


class LocationForm(forms.ModelForm):
    """The one rule for a location (nodeops.validate) on the form's own values too: the inline formset
    compares its rows' cleaned data, so "A.test" and "a.test" in two rows are caught as one location."""

    class Meta:
        model = Location
        fields = ["app", "host", "path", "balancer_cache"]

    def clean_host(self):
        return self._canonical("host", validate.validate_location_host)

    def clean_path(self):
        return self._canonical("path", validate.validate_url_path)

    def _canonical(self, name, check):
        try:
            return check(self.cleaned_data[name])
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


class LocationInline(admin.TabularInline):
    model = Location
    form = LocationForm
    extra = 0


class ServiceInline(admin.TabularInline):
    """The app's data services and where their data are; the password is never shown."""

    model = Service
    fields = ["kind", "node", "settings", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name_plural = "data services (app.ini service.NAME; installed by deploys)"

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Service)
class ServiceAdmin(admin.ModelAdmin):
    list_display = ["app", "kind", "node", "created_at", "updated_at"]
    list_filter = ["kind", "node"]
    search_fields = ["app__name"]
    fields = ["app", "kind", "node", "settings", "created_at", "updated_at"]  # never the password
    readonly_fields = fields

    def has_add_permission(self, request):
        return False  # deploys install services

    def has_delete_permission(self, request, obj=None):
        return False


class ConfigValueForm(forms.ModelForm):
    """One value input for both kinds: a secret's stored value is never sent to the page."""

    new_value = forms.CharField(label="value", required=False, strip=False,
                                widget=forms.Textarea(attrs={"rows": 2, "autocomplete": "off"}))

    class Meta:
        model = ConfigValue
        fields = ["scope", "group", "app", "key", "secret"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk and self.instance.secret:
            self.fields["new_value"].help_text = "A secret is never shown: leave this empty to keep it."
        elif self.instance.pk:
            self.initial["new_value"] = self.instance.value

    def clean(self):
        data = super().clean()
        value, secret = data.get("new_value", ""), data.get("secret", False)
        if secret and value == "" and self.instance.pk and self.instance.secret:
            value = self.instance.secret_value  # kept as it is
        self.instance.set_value(value, secret=secret)
        return data


@admin.register(ConfigValue)
class ConfigValueAdmin(admin.ModelAdmin):
    """Variables in apps' environments; an app's value wins over its group's, which wins over the global one.
    Secrets are encrypted at rest and never shown."""

    form = ConfigValueForm
    actions = ["reveal"]
    list_display = ["key", "scope", "group", "app", "shown_value", "updated_at"]
    list_filter = ["scope", "secret", "group", "app"]
    search_fields = ["key", "app__name", "group__name"]
    fields = ["scope", "group", "app", "key", "secret", "new_value"]

    @admin.action(description="Reveal secret values (recorded in the audit log)", permissions=["change"])
    def reveal(self, request, queryset):
        from django.template.response import TemplateResponse

        from toppcloud_site.records import audit

        shown = []
        for value in queryset:
            if value.secret:
                audit.record("reveal", value, key=value.key)
            shown.append((value, value.plain))
        return TemplateResponse(request, "admin/records/configvalue/reveal.html", {
            **self.admin_site.each_context(request), "title": "Config values", "shown": shown})

    @admin.display(description="value")
    def shown_value(self, obj):
        return masked_value(obj)


def masked_value(value):
    """A config value as admin pages show it: a secret's value never, whatever it is."""
    if value.secret:
        return "(secret, set)" if value.secret_value else "(secret, empty)"
    return value.value if len(value.value) <= 80 else value.value[:77] + "..."


class WriteOnlyTextarea(forms.Textarea):
    """A textarea that never renders a value back, not even the one just submitted with an error."""

    def format_value(self, value):
        return None


class CertificateForm(forms.ModelForm):
    """The chain is shown; the private key is write-only. Both are checked by records/tls.py in clean()."""

    new_private_key = forms.CharField(label="private key", required=False, strip=False,
                                      widget=WriteOnlyTextarea(attrs={"rows": 6, "autocomplete": "off"}),
                                      help_text="PEM, unencrypted. Never shown again.")

    class Meta:
        model = Certificate
        fields = ["host", "certificate"]
        widgets = {"certificate": forms.Textarea(attrs={"rows": 12, "cols": 70})}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["new_private_key"].help_text = "The key is never shown: leave this empty to keep it."

    def clean(self):
        from toppcloud_site.records import tls

        data = super().clean()
        host, chain, key = data.get("host"), data.get("certificate"), data.get("new_private_key", "")
        if not host or not chain:
            return data  # the field errors say what is missing
        if not key and self.instance.pk:
            key = self.instance.private_key  # kept as it is
        if not key:
            self.add_error("new_private_key", "give the certificate's private key (PEM)")
            return data
        self.instance.host = host
        try:
            info = tls.fill_certificate(self.instance, chain, key)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None
        data["host"], data["certificate"] = info["host"], info["certificate"]  # normalized, as stored
        return data


@admin.register(Certificate)
class CertificateAdmin(admin.ModelAdmin):
    """TLS certificates of hosts (also `manage.py tls add`); the private key is encrypted at rest and never shown."""

    form = CertificateForm
    list_display = ["host", "not_after", "days_left", "fingerprint"]
    search_fields = ["host", "fingerprint"]
    fields = ["host", "certificate", "new_private_key", "not_after", "fingerprint", "updated_at"]
    readonly_fields = ["not_after", "fingerprint", "updated_at"]

    @admin.display(description="days left", ordering="not_after")
    def days_left(self, obj):
        from toppcloud_site.records import tls

        return tls.days_left(obj.not_after) if obj.not_after else "-"


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    """Every change of apps, server groups, nodes and config values: read-only."""

    list_display = ["at", "actor", "action", "model", "object_repr", "changes"]
    list_filter = ["action", "model"]
    search_fields = ["actor", "object_repr", "object_id"]
    date_hierarchy = "at"
    readonly_fields = ["at", "actor", "action", "model", "object_id", "object_repr", "changes"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
