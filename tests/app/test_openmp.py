from app.openmp import openmp_env, openmp_wait_policy


def test_wait_policy_is_passive_only_on_a_busy_machine():
    assert openmp_wait_policy(0.1, 2) is None
    assert openmp_wait_policy(0.99, 2) is None
    assert openmp_wait_policy(1.0, 2) == "PASSIVE"
    assert openmp_wait_policy(3.5, 8) is None
    assert openmp_wait_policy(4.0, 8) == "PASSIVE"


def test_a_users_own_wait_policy_wins():
    assert openmp_env({"OMP_WAIT_POLICY": "ACTIVE"}) == {}
    assert set(openmp_env({})) <= {"OMP_WAIT_POLICY"}
