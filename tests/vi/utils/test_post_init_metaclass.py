from torch_blue_pyro.vi.utils import PostInitCallMeta


def test_post_init_runs_after_init() -> None:
    calls = []

    class Checked(metaclass=PostInitCallMeta):
        def __init__(self, value: int) -> None:
            calls.append("init")
            self.value = value

        def __post_init__(self) -> None:
            calls.append(f"post_init {self.value}")

    Checked(3)
    assert calls == ["init", "post_init 3"]
