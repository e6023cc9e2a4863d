from django.urls import path

from billing_portal.portal import plan_views, views

app_name = "portal"
urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.LogoutView.as_view(), name="logout"),
    path("password-reset/", views.PasswordResetView.as_view(), name="password_reset"),
    path("password-reset/sent/", views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path(
        "reset/<uidb64>/<token>/",
        views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path("reset/done/", views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    path("controls/", views.controls, name="controls"),
    path("controls/alerts/", views.alerts_save, name="alerts_save"),
    path("controls/spend-limit/", views.spend_limit_save, name="spend_limit_save"),
    path("controls/auto-recharge/", views.auto_recharge_save, name="auto_recharge_save"),
    path("billing/", views.billing, name="billing"),
    path("billing/plan/", views.plan_change, name="plan_change"),
    path("billing/plans/", plan_views.plans_compare, name="plans"),
    path("billing/plans/confirm/", plan_views.plan_confirm, name="plan_confirm"),
    path("billing/cancel/", plan_views.cancel_confirm, name="cancel_confirm"),
    path("billing/packs/", views.pack_buy, name="pack_buy"),
    path("billing/checkout/<int:pk>/", views.checkout, name="checkout"),
    path("billing/invoices/<int:pk>/", views.invoice_detail, name="invoice"),
    path("billing/credit-notes/<int:pk>/", views.credit_note_detail, name="credit_note"),
    path("activity/", views.activity, name="activity"),
    path("activity/export.csv", views.usage_export, name="usage_export"),
    path("activity/timezone/", views.activity_timezone, name="activity_timezone"),
    path("notifications/", views.notifications, name="notifications"),
    path("notifications/<int:pk>/read/", views.notification_read, name="notification_read"),
    path("team/", views.team, name="team"),
    path("team/invite/", views.member_invite, name="member_invite"),
    path("team/<int:pk>/remove/", views.member_remove, name="member_remove"),
    path("team/<int:pk>/resend/", views.member_resend, name="member_resend"),
]
