import os
import signal
import time

import pytest

from ml_backend.learning.registry import ProjectRecord, Registry, VersionInfo


def info(number, trained=True):
    return VersionInfo(
        version=Registry.version_name("m", number),
        number=number,
        created_at=time.time(),
        model_config={"name": "m"},
        seed=0,
        trained=trained,
        promoted=False,
    )


def test_publish_promote_and_history(tmp_path):
    reg = Registry(tmp_path)
    reg.save_project(ProjectRecord(7, "7.123", "<View/>", "text-minilm"))
    assert reg.get_project(7).project_key == "7.123" and reg.project_ids() == [7]
    v0 = reg.publish(7, info(0, trained=False), {}, promote=True)
    v1 = reg.publish(7, info(1), {"head.pt": b"weights"}, promote=False)
    assert reg.current(7).version == v0.version  # a version that is not promoted does not serve
    assert [v.number for v in reg.versions(7)] == [0, 1] and reg.next_number(7) == 2
    reg.set_current(7, v1.version)
    assert reg.current(7).version == v1.version and reg.read_file(7, v1.version, "head.pt") == b"weights"
    with pytest.raises(FileExistsError):  # the same name again (a fresh info(1) may fall in the next second)
        reg.publish(7, v1, {}, promote=True)


def test_a_version_being_published_is_invisible_to_readers(tmp_path):
    """A reader (the status page) lists versions while the worker writes one: the temp folder's meta.json may still
    be empty, which once failed the status route with a JSONDecodeError."""
    reg = Registry(tmp_path)
    v0 = reg.publish(3, info(0), {}, promote=True)
    being_written = tmp_path / "3" / "versions" / ".tmp-abc"
    being_written.mkdir()
    (being_written / "meta.json").write_text("")
    assert [v.version for v in reg.versions(3)] == [v0.version] and reg.next_number(3) == 1


def test_version_names_are_monotonic_and_say_what_they_are():
    assert Registry.version_name("minilm", 3).startswith("minilm-v3-")


def test_a_crash_while_publishing_leaves_the_previous_version_serving(tmp_path):
    reg = Registry(tmp_path)
    v0 = reg.publish(1, info(0), {"head.pt": b"old"}, promote=True)
    pid = os.fork()
    if pid == 0:  # child: start publishing a huge version and get killed in the middle
        big = {f"part{i}": os.urandom(1 << 20) for i in range(200)}
        reg.publish(1, info(1), big, promote=True)
        os._exit(0)
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert reg.current(1).version == v0.version
    assert [v.number for v in reg.versions(1)] in ([0], [0, 1])  # the half-written one is invisible...
    if len(reg.versions(1)) == 1:
        reg.cleanup_temp(1)  # ...and its temp folder is cleaned up
        assert not list((tmp_path / "1" / "versions").glob(".tmp-*"))


def test_deferred_labels_are_summed_taken_once_and_never_lost_to_concurrent_webhooks(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    reg = Registry(tmp_path)
    assert reg.take_deferred_labels(4) is None and reg.deferred_labels(4) == 0
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: reg.defer_labels(4, 1 + i % 2, force=i == 13), range(40)))
    assert reg.deferred_labels(4) == 60 and reg.projects_with_deferred_labels() == [4]
    assert reg.take_deferred_labels(4) == (60, True)
    assert reg.take_deferred_labels(4) is None and reg.projects_with_deferred_labels() == []
    reg.defer_labels(4, 2, force=False)  # enqueueing failed again: put back
    assert reg.take_deferred_labels(4) == (2, False)
