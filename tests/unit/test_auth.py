import pytest

from service.auth import ROOT, Action, Principal, Role, issue_key, parse_key
from service.problems import Problem


def test_issued_keys_parse_back_and_store_only_a_hash() -> None:
    record, token = issue_key("team.a-1", Role.PRODUCER)
    namespace, key_id, secret = parse_key(token)  # type: ignore[misc]
    assert (namespace, key_id) == ("team.a-1", record.key_id)
    assert secret not in record.secret_hash and len(record.secret_hash) == 64
    assert record.role == "producer"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "aos.",
        "aos.ns.id",
        "aos..id.secret",
        "aos.NS.id.secret",
        "xyz.ns.id.secret",
        "aos.ns.id.",
    ],
)
def test_malformed_keys_do_not_parse(token: str) -> None:
    assert parse_key(token) is None


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        (Role.ADMIN, set(Action)),
        (Role.PRODUCER, {Action.READ, Action.INSPECT, Action.CANCEL, Action.WRITE}),
        (Role.CONSUMER, {Action.READ, Action.INSPECT, Action.CANCEL}),
        (Role.SUBSCRIBER, {Action.READ}),
    ],
)
def test_roles(role: Role, allowed: set[Action]) -> None:
    principal = Principal(role, "a")
    for action in Action:
        if action in allowed:
            principal.authorize("a", action)
        else:
            with pytest.raises(Problem) as caught:
                principal.authorize("a", action)
            assert caught.value.status == 403
        with pytest.raises(Problem) as other:
            principal.authorize("b", action)
        assert other.value.status == 403


def test_root_may_do_anything_anywhere() -> None:
    for action in Action:
        ROOT.authorize("anything", action)


def test_a_job_scoped_token_reads_its_job_only() -> None:
    token = Principal(Role.SUBSCRIBER, "a", job_id="j1", subject="browser")
    token.authorize("a", Action.READ, "j1")
    for job_id in ("j2", None):  # another job, or the namespace as a whole (listing)
        with pytest.raises(Problem) as caught:
            token.authorize("a", Action.READ, job_id)
        assert caught.value.status == 403
    with pytest.raises(Problem):
        token.authorize("b", Action.READ, "j1")
    assert token.actor == "token:browser"
    assert token.credential == "token:browser:j1"
    assert Principal(Role.SUBSCRIBER, "a").credential == "token:-:*"


def test_actors_name_who_acted() -> None:
    assert ROOT.actor == "root" and ROOT.credential is None
    key = Principal(Role.PRODUCER, "a", "k1")
    assert key.actor == "key:k1" and key.credential == "key:k1"
