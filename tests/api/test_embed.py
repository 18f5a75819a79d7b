"""load_encoder / embed: invariant structure features (rotation, translation, supercell), atom
features in input order, results independent of the batch size, and the `foundation embed` npz."""

import numpy as np
import pytest
import torch
from api_fixtures import PEROVSKITES, perovskites, random_rotation, rotated, supercell, translated

from foundation import load_encoder
from foundation.cli import main

TOL = dict(rtol=0, atol=1e-10)  # float64 export


@pytest.fixture(scope="module")
def embedder(export64):
    return load_encoder(export64)


@pytest.fixture(scope="module")
def crystals():
    return perovskites(7)


def test_structure_features_invariant(embedder, crystals):
    crystal = crystals[0]
    copies = [crystal, rotated(crystal, random_rotation(1)), translated(crystal, [0.3, -1.2, 2.5]),
              supercell(crystal), rotated(translated(supercell(crystal, (2, 1, 3)), [1, 2, 3]), random_rotation(2))]
    features = embedder.embed(copies)
    assert features.shape == (5, embedder.n_features) and features.dtype == np.float64
    assert np.abs(features[0]).max() > 1e-3  # not trivially zero
    for i in range(1, len(copies)):
        np.testing.assert_allclose(features[i], features[0], **TOL, err_msg=f"copy {i}")
    # different crystals give different features
    assert np.abs(embedder.embed(crystals[:2])[1] - features[0]).max() > 1e-6


def test_atom_features_follow_input_order(embedder, crystals):
    crystal = crystals[1]
    order = np.random.default_rng(0).permutation(crystal.n_atoms)
    shuffled = crystal.replace(numbers=crystal.numbers[order], positions=crystal.positions[order])
    atoms = embedder.embed([crystal, shuffled], level="atom")
    assert atoms.shape == (2 * crystal.n_atoms, embedder.n_features)
    np.testing.assert_allclose(atoms[crystal.n_atoms:], atoms[:crystal.n_atoms][order], **TOL)
    np.testing.assert_allclose(atoms[:crystal.n_atoms].mean(0), embedder.embed([crystal])[0], **TOL)
    np.testing.assert_allclose(embedder.embed([rotated(crystal, random_rotation(3))], level="atom"),
                               atoms[:crystal.n_atoms], **TOL)


def test_batch_size_does_not_change_features(embedder, crystals):
    mixed = crystals + [supercell(crystals[2])]
    for level in ("structure", "atom"):
        reference = embedder.embed(mixed, level=level, batch_size=64)
        for batch_size in (1, 3):
            np.testing.assert_allclose(embedder.embed(mixed, level=level, batch_size=batch_size), reference,
                                       **TOL, err_msg=f"{level}, batch_size {batch_size}")
    assert embedder.embed([]).shape == (0, embedder.n_features)


def test_mixed_input_types(embedder, crystals):
    crystal = crystals[3]
    features = embedder.embed([crystal, crystal.to_pymatgen(), crystal.to_ase()])
    np.testing.assert_allclose(features[1:], np.repeat(features[:1], 2, axis=0), **TOL)
    with pytest.raises(ValueError, match="level must be"):
        embedder.embed([crystal], level="graph")


def test_embed_cli_writes_features_ids_and_labels(export64, tmp_path, capsys):
    out = tmp_path / "features.npz"
    assert main(["embed", str(export64), str(PEROVSKITES), "--limit", "12", "--out", str(out),
                     "--batch-size", "5"]) == 0
    data = np.load(out)  # no pickle needed: plain arrays only
    expected = load_encoder(export64).embed(perovskites(12))
    np.testing.assert_allclose(data["features"], expected, **TOL)
    assert data["ids"].shape == (12,) and data["ids"][0] == perovskites(1)[0].id
    assert (data["n_atoms"] == 5).all() and str(data["level"]) == "structure"
    labels = [c.targets["formation_energy"] for c in perovskites(12)]
    np.testing.assert_array_equal(data["label_formation_energy"], labels)
    assert "wrote structure-level features (12, 16)" in capsys.readouterr().out

    atom_out = tmp_path / "atoms.npz"
    assert main(["embed", str(export64), str(PEROVSKITES), "--limit", "3", "--out", str(atom_out),
                     "--level", "atom"]) == 0
    atoms = np.load(atom_out)
    assert atoms["features"].shape == (15, 16) and atoms["offsets"].tolist() == [0, 5, 10, 15]
    assert atoms["numbers"].shape == (15,)


def test_block_features_concatenate_every_block_and_stay_invariant(embedder, crystals):
    """level="blocks": the mean invariants of the embedding and of every block side by side, the
    last block's equal to the structure-level features; invariant like them."""
    crystal = crystals[0]
    copies = [crystal, rotated(translated(supercell(crystal, (2, 1, 1)), [0.5, 1, 2]), random_rotation(4))]
    blocks = embedder.embed(copies, level="blocks")
    width = embedder.encoder.n_block_features
    assert blocks.shape == (2, width) and width > embedder.n_features
    np.testing.assert_allclose(blocks[1], blocks[0], **TOL)
    np.testing.assert_allclose(blocks[:, -embedder.n_features:], embedder.embed(copies), **TOL)
    assert embedder.embed([], level="blocks").shape == (0, width)


def test_readout_features_add_each_heads_hidden_layer_and_stay_invariant(embedder, crystals, export64, tmp_path):
    """level="readout": "blocks" then, per structure-level head, the mean over atoms of its hidden
    layer (SiLU(W h_i + b)), computed by hand here; invariant like "blocks"; refused without heads."""
    from foundation import load_model
    from foundation.api import Embedder

    crystal = crystals[2]
    copies = [crystal, rotated(translated(supercell(crystal, (1, 2, 2)), [0.1, 2, -1]), random_rotation(5))]
    readout = embedder.embed(copies, level="readout")
    width = embedder.width("readout")
    heads = [h for h in load_model(export64).model.heads.values() if h.spec.level == "structure"]
    assert heads and list(embedder.readouts) == [h.spec.name for h in heads]
    assert readout.shape == (2, width) and width == embedder.encoder.n_block_features + sum(
        h.mlp[0].out_features for h in heads)
    np.testing.assert_allclose(readout[1], readout[0], **TOL)
    np.testing.assert_allclose(readout[:, :embedder.encoder.n_block_features], embedder.embed(copies, level="blocks"), **TOL)
    atoms = torch.as_tensor(embedder.embed(copies[:1], level="atom"))  # [n_atoms, F]
    start = embedder.encoder.n_block_features
    for head in heads:
        with torch.no_grad():
            hidden = torch.nn.functional.silu(head.mlp[0](atoms)).mean(0).numpy()
        np.testing.assert_allclose(readout[0, start:start + hidden.size], hidden, rtol=0, atol=1e-9)
        start += hidden.size
    out = tmp_path / "readout.npz"
    assert main(["embed", str(export64), str(PEROVSKITES), "--limit", "2", "--level", "readout", "--out", str(out)]) == 0
    assert np.load(out)["features"].shape == (2, width)
    with pytest.raises(ValueError, match="structure-level heads"):
        Embedder(embedder.encoder, embedder.device).embed(copies, level="readout")


def test_shipped_models_load_by_name_and_unknown_names_are_refused(tmp_path):
    from foundation.model.export import ExportError
    from foundation.pretrained import available

    names = available()
    assert "small-corpus" in names  # the model foundation ships (foundation/pretrained/)
    encoder = load_encoder("small-corpus")
    features = encoder.embed(perovskites(2), level="blocks")
    assert features.shape == (2, encoder.encoder.n_block_features) and np.isfinite(features).all()
    with pytest.raises(ExportError, match="nor a shipped model"):
        load_encoder("no-such-model")
    out = tmp_path / "f.npz"
    assert main(["embed", "small-corpus", str(PEROVSKITES), "--limit", "3", "--level", "blocks", "--out", str(out)]) == 0
    assert np.load(out)["features"].shape == (3, encoder.encoder.n_block_features)
