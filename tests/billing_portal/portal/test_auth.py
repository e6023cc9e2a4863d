from __future__ import annotations

import re

from django.contrib.auth.models import User
from django.core import mail
from django.test import Client

from tests.billing_portal.portal.factories import PASSWORD


def test_it_redirects_anonymous_visitors_to_sign_in(db: None) -> None:
    response = Client().get("/portal/")
    assert response.status_code == 302
    assert response["Location"] == "/portal/login/?next=/portal/"


def test_it_signs_in_and_lands_on_the_dashboard(owner: User) -> None:
    client = Client()
    assert client.get("/portal/login/").status_code == 200
    response = client.post("/portal/login/", {"username": owner.username, "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == "/portal/"
    assert client.get("/portal/").status_code == 200


def test_it_shows_an_error_for_a_wrong_password(owner: User) -> None:
    response = Client().post("/portal/login/", {"username": owner.username, "password": "nope"})
    assert response.status_code == 200
    assert b"Please enter a correct" in response.content


def test_it_signs_out(client_owner: Client) -> None:
    response = client_owner.post("/portal/logout/")
    assert response.status_code == 302
    assert response["Location"] == "/portal/login/"
    assert client_owner.get("/portal/").status_code == 302


def test_it_refuses_a_user_who_belongs_to_no_customer(db: None) -> None:
    client = Client()
    client.force_login(User.objects.create_user("stray", password=PASSWORD))
    assert client.get("/portal/").status_code == 403


def test_it_resets_a_password_by_e_mail(owner: User) -> None:
    client = Client()
    assert client.get("/portal/password-reset/").status_code == 200
    response = client.post("/portal/password-reset/", {"email": owner.email})
    assert response["Location"] == "/portal/password-reset/sent/"
    assert client.get(response["Location"]).status_code == 200
    [message] = mail.outbox
    link = re.search(r"http://testserver(/portal/reset/\S+/)", str(message.body))
    assert link is not None
    form = client.get(link.group(1), follow=True)
    assert form.status_code == 200
    assert b"new_password1" in form.content
    new = "another-long-passphrase-42"
    done = client.post(
        form.redirect_chain[-1][0], {"new_password1": new, "new_password2": new}, follow=True
    )
    assert done.redirect_chain[-1][0] == "/portal/reset/done/"
    assert Client().login(username=owner.username, password=new)


def test_it_shows_an_invalid_reset_link(db: None) -> None:
    response = Client().get("/portal/reset/MQ/bad-token/")
    assert response.status_code == 200
    assert b"no longer valid" in response.content


def test_the_sign_in_form_asks_for_the_e_mail_address(db: None) -> None:
    html = Client().get("/portal/login/").content.decode()
    assert '<label for="id_username">E-mail</label>' in html or ">E-mail<" in html
    assert "Username" not in html
    assert 'autocomplete="email"' in html
