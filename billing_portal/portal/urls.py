from django.urls import path

app_name = "portal"
urlpatterns: list[object] = []
