from django.contrib import admin


class LeadCenterAdminSite(admin.AdminSite):
    site_header = "LeadCenter"
    site_title = "LeadCenter"
    index_title = "Campaigns, contacts and delivery"
