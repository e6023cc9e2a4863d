from django.urls import path

from billing_portal.invoicing import api

urlpatterns = [
    path(
        "customers/<str:external_id>/invoices",
        api.CustomerInvoicesApi.as_view(),
        name="customer-invoices",
    ),
    path("invoices/<str:invoice_id>", api.InvoiceDetailApi.as_view(), name="invoice-detail"),
]
