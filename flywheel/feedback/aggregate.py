"""From judgements to decisions: Bradley–Terry scores per object, annotator agreement and
quality, and the round's accept / DPO / hard-case decisions.

- Pairwise rows are one comparison; a best-of-N row is its winner beating each loser.
  Per object, Bradley–Terry log-strengths come from ``choix.lsr_pairwise_dense`` (Luce
  spectral ranking, a consistent estimator that needs no iterations; ``alpha`` regularises
  objects with few comparisons) on win counts weighted by annotator quality. The
  expansion, grouping and counting are vectorised with pyarrow / numpy.
- An object's **score** is the mean BT probability that its top candidate beats each of
  the others (0.5 = no preference, 1 = beats all); its **confidence** is the probability
  that it beats the runner-up.
- Reject-all votes count per judgement — one vote per annotator and object, however many
  rows it took; when their (annotator-weighted) share reaches ``reject_share``, the object
  goes to the **hard-case queue** (3D artists, in the paper).
- Round k accepts the top candidate when its score passes ``alpha_k`` (thresholds rise over
  rounds): it becomes an SFT example, and (winner, each candidate it beat) a DPO pair.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import choix
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from flywheel.feedback.exports import arrow_text


def comparisons(rankings: pa.Table) -> pd.DataFrame:
    """One row per (object, annotator, winner, loser) from pairwise and best-of-N rows."""
    ranked = rankings.filter(pc.is_in(rankings["kind"], pa.array(["pairwise", "best-of-n"])))
    parents = pc.list_parent_indices(ranked["losers"])
    arrow = {
        "object_id": pc.take(ranked["object_id"], parents),
        "annotator_id": pc.take(ranked["annotator_id"], parents),
        "winner": pc.take(ranked["winner"], parents),
        "loser": pc.list_flatten(ranked["losers"]),
    }
    return pd.DataFrame({k: pd.arrays.ArrowExtensionArray(v) for k, v in arrow.items()})  # stays columnar


def bradley_terry(
    pairs: pd.DataFrame, registry: pd.DataFrame, alpha: float = 0.1, weights: dict[str, float] | None = None
) -> pd.DataFrame:
    """Per candidate of every judged object: BT log-strength (mean 0 within its object),
    wins and losses; rows sorted by object, then candidate. ``registry``: candidate_id,
    object_id. ``weights``: per annotator (absent: 1); a comparison counts its annotator's
    weight over the mean weight of all comparisons, so equal weights are no weights.

    Works on integer codes: the registry sorted in Arrow, one hash lookup of the compared
    ids, then per object a (weighted) win-count matrix, filled for all objects at once, and
    one ``choix.lsr_pairwise_dense`` fit (it takes fractional counts)."""
    objects, ids = arrow_text(registry["object_id"]), arrow_text(registry["candidate_id"])
    if objects.null_count or ids.null_count:
        raise ValueError("bradley_terry: the registry has candidates without a candidate or object id")
    order = pc.sort_indices(pa.table({"o": objects, "c": ids}), sort_keys=[("o", "ascending"), ("c", "ascending")])
    reg = registry.iloc[order.to_numpy()].reset_index(drop=True)
    if len(pairs) == 0:
        return reg.iloc[:0].assign(
            strength=pd.Series(dtype=float), wins=pd.Series(dtype=int), losses=pd.Series(dtype=int)
        )
    obj_code = pc.dictionary_encode(objects.take(order)).indices.to_numpy()  # increasing: sorted
    ids = ids.take(order)
    sizes = np.bincount(obj_code)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    item = np.arange(len(reg)) - starts[obj_code]  # index within its object
    position = pc.index_in(pa.concat_arrays([arrow_text(pairs["winner"]), arrow_text(pairs["loser"])]), value_set=ids)
    if position.null_count:
        raise ValueError("bradley_terry: comparisons name candidates that are not in the registry")
    w_pos, l_pos = np.split(position.to_numpy(), 2)
    if (obj_code[w_pos] != obj_code[l_pos]).any():
        raise ValueError("bradley_terry: a comparison names candidates of two objects")
    weight = _annotator_weights(arrow_text(pairs["annotator_id"]), weights)
    weight = weight / weight.mean() if weight.mean() > 0 else np.ones(len(weight))
    judged_objects, pair_judged = np.unique(obj_code[w_pos], return_inverse=True)
    n_items = sizes[judged_objects]
    matrix_at = np.cumsum(n_items**2) - n_items**2  # each judged object's n x n block
    cell = matrix_at[pair_judged] + item[w_pos] * n_items[pair_judged] + item[l_pos]
    counts = np.bincount(cell, weights=weight, minlength=int((n_items**2).sum()))
    fitted = _fit_all(counts, n_items, alpha)  # concatenated, per judged object
    first_item = np.cumsum(n_items) - n_items  # of each judged object in ``fitted``
    means = np.add.reduceat(fitted, first_item) / n_items
    strengths = np.zeros(len(reg))
    strengths[np.arange(len(fitted)) + np.repeat(starts[judged_objects] - first_item, n_items)] = fitted - np.repeat(
        means, n_items
    )
    judged = np.zeros(len(sizes), bool)
    judged[judged_objects] = True
    judged = judged[obj_code]
    out = reg[judged].reset_index(drop=True)
    out["strength"] = strengths[judged]
    out["wins"] = np.bincount(w_pos, minlength=len(reg))[judged]
    out["losses"] = np.bincount(l_pos, minlength=len(reg))[judged]
    return out


def _annotator_weights(annotator_ids, weights: dict[str, float] | None) -> np.ndarray:
    """Each row's annotator weight; annotators without one count 1."""
    if not weights:
        return np.ones(len(annotator_ids))
    known = pc.fill_null(pc.index_in(annotator_ids, value_set=pa.array(list(weights), pa.string())), -1).to_numpy()
    return np.where(known >= 0, np.array(list(weights.values()), float)[known], 1.0)


def _fit(counts: np.ndarray, n_items: np.ndarray, alpha: float) -> np.ndarray:
    """choix.lsr_pairwise_dense per object; ``counts`` holds their n x n win matrices in turn."""
    out, at = [], 0
    for n in n_items.tolist():
        out.append(choix.lsr_pairwise_dense(counts[at : at + n * n].reshape(n, n), alpha=alpha))
        at += n * n
    return np.concatenate(out) if out else np.zeros(0)


def _fit_all(counts: np.ndarray, n_items: np.ndarray, alpha: float, parallel_above: int = 5000) -> np.ndarray:
    """One choix fit per object; many objects are spread over the machine's cores (each
    worker gets a slice of plain arrays: cheap to send)."""
    objects = len(n_items)
    workers = min(os.cpu_count() or 1, 8)
    if objects < parallel_above or workers < 2:
        return _fit(counts, n_items, alpha)
    from concurrent.futures import ProcessPoolExecutor

    cuts = np.linspace(0, objects, workers + 1).astype(int)
    at = np.r_[0, np.cumsum(n_items**2)]
    jobs = [(counts[at[a] : at[b]], n_items[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    with ProcessPoolExecutor(workers) as pool:
        return np.concatenate(list(pool.map(_fit, *zip(*jobs), [alpha] * len(jobs))))


@dataclass(frozen=True)
class DecisionRules:
    alpha: float  # the round's acceptance threshold on the score
    reject_share: float = 0.5  # weighted share of reject-all votes that makes a hard case
    min_judgements: int = 1  # fewer judgements: undecided (wait for more)


def decide(
    rankings: pa.Table,
    registry: pd.DataFrame,
    rules: DecisionRules,
    weights: dict[str, float] | None = None,
    bt_alpha: float = 0.1,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-object decisions, per-candidate scores). Decisions: ``accept``, ``hard-case``,
    ``below-threshold`` or ``undecided``, with winner, runner-up, score and confidence."""
    pairs = comparisons(rankings)
    scores = bradley_terry(pairs, registry, bt_alpha, weights)
    per_object = _reject_votes(rankings, weights)
    per_object["reject_share"] = per_object["reject_weight"] / per_object["weight"].where(per_object["weight"] > 0, 1)

    # top and runner-up per object: scores are grouped by object; sort within by strength
    encoded = pc.dictionary_encode(arrow_text(scores["object_id"]))
    code, uniques = encoded.indices.to_numpy(), encoded.dictionary.to_numpy(zero_copy_only=False)
    strength = scores["strength"].to_numpy()
    order = np.lexsort((-strength, code))  # stable: equal strengths keep registry order
    code_s, strength_s = code[order], strength[order]
    first = np.flatnonzero(np.r_[True, code_s[1:] != code_s[:-1]]) if len(code_s) else np.zeros(0, int)
    size = np.diff(np.r_[first, len(code_s)])
    top_strength = np.repeat(strength_s[first], size)
    rest = np.ones(len(code_s), bool)
    rest[first] = False
    p = 1 / (1 + np.exp(-(top_strength - strength_s)))
    score = np.bincount(code_s[rest], weights=p[rest], minlength=len(uniques)) / np.maximum(size - 1, 1)
    candidates = scores["candidate_id"].to_numpy(dtype=object)[order]
    has_second = size > 1
    second_idx = np.where(has_second, first + 1, first)
    summary = pd.DataFrame(
        {
            "winner": candidates[first],
            "runner_up": np.where(has_second, candidates[second_idx], np.array(None)),
            "score": np.where(has_second, score, np.nan),
            "confidence": np.where(has_second, 1 / (1 + np.exp(-(strength_s[first] - strength_s[second_idx]))), np.nan),
        },
        index=pd.Index(uniques[code_s[first]], name="object_id"),
    )

    out = per_object.join(summary, how="left")
    decision = np.where(
        out["judgements"] < rules.min_judgements,
        "undecided",
        np.where(
            out["reject_share"] >= rules.reject_share,
            "hard-case",
            np.where(
                out["score"].fillna(0) >= rules.alpha,
                "accept",
                np.where(out["winner"].isna(), "undecided", "below-threshold"),
            ),
        ),
    )
    out["decision"] = decision
    out.loc[out["decision"] == "hard-case", ["winner", "runner_up"]] = None
    return out.reset_index(), scores


def _reject_votes(rankings: pa.Table, weights: dict[str, float] | None) -> pd.DataFrame:
    """Per object: ``judgements`` (annotators who judged it), ``rejects`` (their reject-all
    votes) and the annotator-weighted ``weight`` / ``reject_weight``. Each annotator's
    judgement of an object is one vote, however many rows it took: six pairwise rows weigh
    no more than one reject-all. An annotator whose rows on an object mix reject-alls and
    rankings votes the reject-all share of those rows."""
    table = pa.table(
        {
            "object_id": rankings["object_id"],
            "annotator_id": rankings["annotator_id"],
            "reject": pc.fill_null(pc.equal(rankings["kind"], "reject-all"), False).to_numpy().astype(np.float64),
        }
    )
    votes = table.group_by(["object_id", "annotator_id"]).aggregate([("reject", "mean")])
    weight = _annotator_weights(votes["annotator_id"], weights)
    reject = votes["reject_mean"].to_numpy()
    per_judgement = pa.table(
        {"object_id": votes["object_id"], "reject": reject, "weight": weight, "reject_weight": weight * reject}
    )
    return (
        per_judgement.group_by("object_id")
        .aggregate([("reject", "count"), ("reject", "sum"), ("weight", "sum"), ("reject_weight", "sum")])
        .sort_by("object_id")
        .to_pandas()
        .rename(
            columns={
                "reject_count": "judgements",
                "reject_sum": "rejects",
                "weight_sum": "weight",
                "reject_weight_sum": "reject_weight",
            }
        )
        .set_index("object_id")
    )


def aligned_poses(decisions: pd.DataFrame, rankings: pa.Table) -> pd.Series:
    """Per decision row, the pose an annotator aligned its winner to (the latest judgement
    that chose that winner and aligned it), else None: the layout target SFT then uses."""
    out = pd.Series([None] * len(decisions), index=decisions.index, dtype=object)
    if "aligned_pose" not in rankings.column_names:
        return out
    given = rankings.filter(pc.is_valid(rankings["aligned_pose"]))
    if given.num_rows == 0:
        return out
    rows = pd.DataFrame(
        {
            "object_id": given["object_id"].to_pylist(),
            "winner": given["winner"].to_pylist(),
            "timestamp": given["timestamp"].to_pylist(),
            "submission_id": given["submission_id"].to_pylist(),
            "aligned_pose": given["aligned_pose"].to_pylist(),
        }
    ).sort_values(["timestamp", "submission_id"])
    latest = rows.groupby(["object_id", "winner"])["aligned_pose"].last()
    keys = list(zip(decisions["object_id"], decisions["winner"]))
    return pd.Series([latest.get(k) for k in keys], index=decisions.index, dtype=object)


def preference_pairs(decisions: pd.DataFrame, rankings: pa.Table) -> pd.DataFrame:
    """DPO pairs of accepted objects: (winner, each candidate it beat in some judgement)."""
    pairs = comparisons(rankings)
    accepted = decisions[decisions["decision"] == "accept"][["object_id", "winner", "score"]]
    beaten = pairs.merge(accepted, on=["object_id", "winner"])
    return (
        beaten.groupby(["object_id", "winner", "loser"], as_index=False)
        .agg(times=("annotator_id", "size"), score=("score", "first"))
        .sort_values(["object_id", "loser"])
        .reset_index(drop=True)
    )


def acceptance_threshold(round_index: int, schedule: list[float]) -> float:
    """alpha_k: the schedule's k-th value, its last value from then on (thresholds rise)."""
    return schedule[min(round_index, len(schedule) - 1)]


@dataclass(frozen=True)
class RoundJudgement:
    """What one round's decisions rest on, and the decisions."""

    round_index: int
    alpha: float
    decisions: pd.DataFrame  # per object: decide()
    preferences: pd.DataFrame  # DPO pairs: preference_pairs()
    annotators: pd.DataFrame  # per annotator: annotator_stats()
    agreement: dict  # agreement()

    def metrics(self) -> dict[str, float]:
        """Counts, accept rate, threshold and agreement, as logged to MLflow."""
        d = self.decisions
        judged = len(d)
        accepted = int((d["decision"] == "accept").sum())
        return {
            "objects_judged": judged,
            "accepted": accepted,
            "aligned": int(d.loc[d["decision"] == "accept", "aligned_pose"].notna().sum())
            if "aligned_pose" in d
            else 0,
            "hard_cases": int((d["decision"] == "hard-case").sum()),
            "preference_pairs": len(self.preferences),
            "accept_rate": accepted / judged if judged else 0.0,
            "alpha": self.alpha,
            "annotators": len(self.annotators),
            "overlapping_items": self.agreement["overlapping_items"],
            **({"fleiss_kappa": self.agreement["fleiss"]} if self.agreement["fleiss"] is not None else {}),
            **{f"decision_{k.replace('-', '_')}": int(v) for k, v in d["decision"].value_counts().items()},
            **(
                {
                    f"winners_{m}": int(n)
                    for m, n in d.loc[d["decision"] == "accept", "winner_member"].value_counts().items()
                }
                if "winner_member" in d
                else {}
            ),
        }


def judge_round(
    rankings: pa.Table,
    registry: pd.DataFrame,
    round_index: int,
    *,
    alpha_schedule: list[float],
    reject_share: float,
    min_judgements: int,
    bt_alpha: float,
    gold: dict[str, str] | None = None,
) -> RoundJudgement:
    """Round k's decisions on the objects of ``registry`` (candidate_id, object_id): the
    rankings accumulate over rounds, so judgements of other objects are left out. Annotator
    weights (gold accuracy, else agreement with the majority) weigh the fit and the
    reject-all shares; the threshold is ``alpha_schedule``'s k-th value."""
    rankings = rankings.filter(pc.is_in(rankings["object_id"], pa.array(pd.unique(registry["object_id"]), pa.string())))
    alpha = acceptance_threshold(round_index, alpha_schedule)
    pairs = comparisons(rankings)
    stats = annotator_stats(rankings, pairs, gold or None)
    decisions, _ = decide(
        rankings,
        registry[["candidate_id", "object_id"]],
        DecisionRules(alpha, reject_share, min_judgements),
        weights=dict(zip(stats["annotator_id"], stats["weight"])),
        bt_alpha=bt_alpha,
    )
    decisions["aligned_pose"] = aligned_poses(decisions, rankings)
    if "member" in registry:  # which ensemble member made each winner (the report says whose win)
        decisions["winner_member"] = decisions["winner"].map(registry.set_index("candidate_id")["member"])
    return RoundJudgement(round_index, alpha, decisions, preference_pairs(decisions, rankings), stats, agreement(pairs))


def _labelled_items(pairs: pd.DataFrame) -> pd.DataFrame:
    """Each comparison as an item (object + unordered pair) with a binary label."""
    w, lo = pairs["winner"].astype(str), pairs["loser"].astype(str)
    first, second = w.where(w < lo, lo), w.where(w > lo, lo)
    return pd.DataFrame(
        {
            "item": pairs["object_id"].astype(str) + "|" + first + "|" + second,
            "annotator_id": pairs["annotator_id"].to_numpy(),
            "label": (w == first).astype(int).to_numpy(),
        }
    )


def agreement(pairs: pd.DataFrame, min_overlap: int = 5) -> dict:
    """Inter-annotator agreement on items judged by more than one annotator: Cohen's kappa
    per annotator pair with at least ``min_overlap`` shared items, and Fleiss' kappa over
    the items rated by the most common number (>= 2) of annotators."""
    from sklearn.metrics import cohen_kappa_score
    from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

    items = _labelled_items(pairs).drop_duplicates(["item", "annotator_id"])
    wide = items.pivot(index="item", columns="annotator_id", values="label")
    cohen = {}
    names = list(wide.columns)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            both = wide[[a, b]].dropna()
            if len(both) >= min_overlap:
                with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
                    warnings.simplefilter("ignore")  # one shared label: sklearn warns, returns NaN
                    value = cohen_kappa_score(both[a].astype(int), both[b].astype(int), labels=[0, 1])
                # NaN: both used one and the same label throughout, i.e. perfect agreement
                cohen[f"{a}~{b}"] = 1.0 if np.isnan(value) else float(value)
    raters = wide.notna().sum(axis=1)
    fleiss = None
    if (raters >= 2).any():
        m = int(raters[raters >= 2].mode().iloc[0])
        rows = wide[raters == m]
        table = np.stack([np.sort(r.dropna().to_numpy())[:m] for _, r in rows.iterrows()]).astype(int)
        counts, _ = aggregate_raters(table, n_cat=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            value = float(fleiss_kappa(counts)) if len(counts) > 1 else float("nan")
        fleiss = None if np.isnan(value) else value  # undefined when every rating is the same
    return {"cohen": cohen, "fleiss": fleiss, "overlapping_items": int((raters >= 2).sum())}


def annotator_stats(rankings: pa.Table, pairs: pd.DataFrame, gold: dict[str, str] | None = None) -> pd.DataFrame:
    """Per annotator: judgements, median seconds, agreement with the majority on shared
    items, accuracy on gold items (objects with a known best candidate) and a weight
    (smoothed gold accuracy, else smoothed majority agreement)."""
    table = pd.DataFrame(
        {
            "annotator_id": rankings["annotator_id"].to_numpy(zero_copy_only=False),
            "object_id": rankings["object_id"].to_numpy(zero_copy_only=False),
            "winner": rankings["winner"].to_numpy(zero_copy_only=False),
            "seconds": rankings["time_spent_s"].to_numpy(),
        }
    )
    out = table.groupby("annotator_id").agg(judgements=("object_id", "size"), median_seconds=("seconds", "median"))
    items = _labelled_items(pairs)
    share = items.groupby("item")["label"].mean()
    majority = pd.Series(np.where(share > 0.5, 1.0, np.where(share < 0.5, 0.0, np.nan)), index=share.index)
    shared = items[items["item"].map(items.groupby("item")["annotator_id"].nunique()) >= 2].copy()
    shared["agrees"] = shared["label"] == shared["item"].map(majority)
    shared = shared[shared["item"].map(majority).notna()]
    agree = shared.groupby("annotator_id")["agrees"].agg(["sum", "size"])
    out["majority_agreement"] = (agree["sum"] / agree["size"]).reindex(out.index)
    if gold:
        graded = table[table["object_id"].isin(gold) & table["winner"].notna()].copy()
        graded["correct"] = graded["winner"] == graded["object_id"].map(gold)
        g = graded.groupby("annotator_id")["correct"].agg(["sum", "size"])
        out["gold_items"] = g["size"].reindex(out.index).fillna(0).astype(int)
        out["gold_accuracy"] = (g["sum"] / g["size"]).reindex(out.index)
        weight = (g["sum"] + 1) / (g["size"] + 2)
    else:
        weight = (agree["sum"] + 1) / (agree["size"] + 2)
    out["weight"] = weight.reindex(out.index).fillna(0.5)
    return out.reset_index()
