"""The cloud's side of data campaigns: which class needs data most, the campaign for it, its signed job."""

import pytest

from fleetloop_core.contracts.selection_job import parse_selection_job
from fleetloop_core.signing import verify_document

from fleetloop_cloud.campaigns import (
    CampaignConfig,
    Need,
    class_needs,
    disagreement_needs,
    field_prevalence,
    propose,
    site_needs,
    upload_share,
    weight_by,
)


def test_the_class_with_the_largest_gap_and_fewest_labels_comes_first(signing_keys):
    classes = ["bag", "shirt", "trouser", "none"]
    labels = {"bag": 3, "shirt": 80, "trouser": 200, "none": 0}
    scores = {"bag": 0.40, "shirt": 0.55, "trouser": 0.97}
    needs = class_needs(classes, labels, scores, skip=["none"])
    assert [n.name for n in needs] == ["bag", "shirt", "trouser"]  # "none" is never asked for
    assert needs[0].need == pytest.approx(0.6 / 2.0) and needs[0].to_dict()["labels"] == 3
    assert class_needs(["sandal"], {}, {})[0].need == 1.0  # never scored, never labeled: the most need

    campaign = propose(needs, CampaignConfig(expires_s=60), version="2", now=1000.0)
    assert campaign.changes == {"class_weights": {"bag": 4.0}}  # the robots' own policy and budget stay
    by_probability = propose(needs, CampaignConfig(expires_s=60, weight_by="probability"), version="2", now=1000.0)
    assert by_probability.changes == {"class_weights": {"bag": 4.0}, "class_weight_by": "probability"}
    quota = CampaignConfig(aim="quota", share=0.4, others_share=0.1, expires_s=60)
    campaign = propose(needs, quota, version="2", now=1000.0)
    assert campaign.name == "more-bag" and campaign.target == "bag" and campaign.expires_at == 1060.0
    assert campaign.changes == {
        "policy.name": "class_quota",
        "policy.params.shares": {"bag": 0.4},
        "policy.params.max_share": 0.1,
    }
    assert "bag: 3 accepted labels, field score 0.40" in campaign.reason
    document = campaign.document(signing_keys["keys"]["fleet"][0])
    verify_document(document, signing_keys["trusted"], "campaign")  # signed by the fleet's key
    assert parse_selection_job(document).campaign == "more-bag"

    satisfied = class_needs(["trouser"], {"trouser": 10_000}, {"trouser": 0.99})
    assert propose(satisfied, CampaignConfig(), "3", 0.0) is None  # no class needs a campaign
    assert upload_share(["bag", "shirt", "bag", "none"], "bag") == 0.5 and upload_share([], "bag") == 0.0


def test_a_class_the_cameras_do_not_show_or_the_robots_cannot_recognise_gets_no_campaign():
    classes = ["bag", "shirt", "trouser", "none"]
    # the robots' random sample, as labeled: shirts and bags, never a trouser
    prevalence = field_prevalence(classes, [1] * 10 + [0] * 6 + [3] * 24)
    assert prevalence["trouser"] == pytest.approx(0.5 / 42) and sum(prevalence.values()) == pytest.approx(1.0)
    assert field_prevalence(classes, []) is None  # no random sample: unknown, not zero

    labels = {"bag": 20, "shirt": 20, "trouser": 0}
    scores = {"bag": 0.05, "shirt": 0.5, "trouser": 0.4}
    needs = class_needs(classes, labels, scores, skip=["none"], prevalence=prevalence)
    assert [n.name for n in needs] == ["bag", "shirt", "trouser"]  # trouser: unlabeled, but never seen
    assert needs[0].need == pytest.approx(prevalence["bag"] * 0.95 / 21**0.5)
    # bag is the neediest, but the serving model finds 5 % of bags: the robots cannot select them
    campaign = propose(needs, CampaignConfig(min_recall=0.2), "1", 0.0)
    assert campaign.target == "shirt" and f"{prevalence['shirt']:.1%} of the random sample" in campaign.reason
    assert propose(needs, CampaignConfig(min_recall=0.0), "1", 0.0).target == "bag"


def test_the_site_with_the_largest_gap_gets_a_budget_campaign_for_its_robots_only():
    scores = {"site-0": 0.85, "site-1": 0.55, "site-2": 0.60}
    labels = {"site-0": 100, "site-1": 99, "site-2": 5}
    robots = {"site-0": ["r0"], "site-1": ["r1", "r2"]}  # nobody at site-2 any more
    prevalence = {"site-0": 0.4, "site-1": 0.4, "site-2": 0.2}
    needs = site_needs(scores, labels, robots, prevalence)
    assert [n.name for n in needs] == ["site-2", "site-1", "site-0"]
    assert needs[1].need == pytest.approx(0.4 * 0.45 / 10.0) and needs[1].to_dict()["robots"] == ["r1", "r2"]

    campaign = propose(needs, CampaignConfig(site_frames_per_hour=1500, expires_s=60), "4", 100.0)
    # site-2 needs most, but no robot is there to ask: the campaign goes to site-1's robots
    assert campaign.kind == "site" and campaign.target == "site-1" and campaign.robots == ("r1", "r2")
    assert campaign.name == "more-from-site-1" and campaign.changes == {"budget.frames_per_hour": 1500}
    assert "site-1: 99 accepted labels, field accuracy 0.55, 40.0% of the random sample" in campaign.reason
    assert propose(needs, CampaignConfig(kinds=("class",)), "4", 0.0) is None  # not a reason it may use
    assert upload_share(["site-1", "site-0", "site-1"], "site-1") == pytest.approx(2 / 3)


def test_a_class_the_teachers_disagree_on_is_asked_for_when_the_robots_can_find_it():
    # T1 labels 40 uploads "shirt" and T2 agrees on 30 %; 50 "bag" (agreement 0.4), 5 "sandal" (too few)
    agreement = {"shirt": (0.3, 40), "bag": (0.4, 50), "sandal": (0.0, 5), "none": (0.1, 90)}
    labels = {"shirt": 15, "bag": 15}
    recall = {"shirt": 0.6, "bag": 0.1}
    needs = disagreement_needs(agreement, labels, recall, min_frames=20, skip=["none"])
    assert [n.name for n in needs] == ["shirt", "bag"] and needs[0].need == pytest.approx(0.7 / 4.0)
    assert needs[0].to_dict() == {
        "kind": "disagreement", "name": "shirt", "labels": 15, "score": 0.3, "prevalence": None,
        "need": 0.175, "frames": 40,
    }  # fmt: skip
    campaign = propose(needs, CampaignConfig(), "1", 0.0)
    assert campaign.kind == "disagreement" and campaign.name == "more-shirt-disputed"
    assert campaign.changes == {"class_weights": {"shirt": 4.0}}
    assert "teachers agree on 0.30 of 40 uploads T1 labels shirt" in campaign.reason
    # the serving model finds 10 % of bags: bags are not asked for even when they are the most disputed
    only_bags = disagreement_needs({"bag": (0.0, 50)}, {}, recall, min_frames=20)
    assert propose(only_bags, CampaignConfig(min_recall=0.2), "1", 0.0) is None


def test_the_neediest_reason_wins_whatever_its_kind():
    classes = class_needs(["bag", "shirt"], {"bag": 99, "shirt": 99}, {"bag": 0.5, "shirt": 0.8})
    sites = site_needs({"site-0": 0.2}, {"site-0": 99}, {"site-0": ["r0"]})
    assert propose(classes + sites, CampaignConfig(), "1", 0.0).target == "site-0"
    assert propose(classes + sites, CampaignConfig(kinds=("class", "disagreement")), "1", 0.0).target == "bag"


def test_a_class_the_robots_already_upload_more_than_the_field_shows_is_discounted():
    classes = ["t-shirt", "dress", "none"]
    prevalence = {"t-shirt": 0.12, "dress": 0.06, "none": 0.82}
    labels = {"t-shirt": 33, "dress": 19}
    scores = {"t-shirt": 0.33, "dress": 0.27}
    plain = class_needs(classes, labels, scores, ["none"], prevalence)
    assert plain[0].name == "t-shirt"  # without the uploads: the larger gap in the larger class
    # the robots' own labels: a quarter of their uploads are t-shirts already, twice the field's share
    uploaded = {"t-shirt": 0.24, "dress": 0.03, "none": 0.73}
    needs = class_needs(classes, labels, scores, ["none"], prevalence, uploaded)
    assert [n.name for n in needs] == ["dress", "t-shirt"]
    assert needs[1].need == pytest.approx(plain[0].need * 0.12 / 0.24)  # halved: the fleet brings it unasked
    assert needs[0].need == pytest.approx(plain[1].need)  # under-uploaded: no bonus, only the discount exists
    assert "24.0% of the uploads" in needs[1].why() and needs[1].to_dict()["uploaded"] == 0.24
    campaign = propose(needs, CampaignConfig(), "1", 0.0)
    assert campaign.target == "dress"
    disputed = disagreement_needs({"t-shirt": (0.5, 40)}, labels, scores, 20, (), prevalence, uploaded)
    assert disputed[0].need == pytest.approx(0.12 * 0.5 / 34**0.5 * 0.5)


def test_auto_weighs_by_probability_a_class_the_robots_seldom_name():
    # the demo's seed 2: coats are 6.5 % of the random sample but the robots named 0.8 % of their uploads coat
    # (they label most coats as something else): weighing by label would move nothing
    coat = Need("coat", 8, 0.26, 0.016, prevalence=0.065, recall=0.3, uploaded=0.008)
    campaign = propose([coat], CampaignConfig(min_need=0.0), "1", 0.0)
    assert campaign.changes == {"class_weights": {"coat": 4.0}, "class_weight_by": "probability"}
    assert "weighed by the robots' probability of it too" in campaign.reason
    # seed 0: shirts 9.5 % of the random sample, 12.6 % of the uploads: by label, as before
    shirt = Need("shirt", 16, 0.20, 0.014, prevalence=0.095, recall=0.3, uploaded=0.126)
    assert propose([shirt], CampaignConfig(min_need=0.0), "1", 0.0).changes == {"class_weights": {"shirt": 4.0}}
    assert weight_by(shirt, CampaignConfig(weight_by="probability")) == "probability"
    assert weight_by(coat, CampaignConfig(weight_by="label")) == "label"
    assert weight_by(Need("bag", 0, None, 1.0), CampaignConfig()) == "label"  # nothing known: by label
