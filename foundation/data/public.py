"""The public databases `foundation download` knows by name: where they are served and the checksums
their publishers give (download.py fetches and converts them)."""

from __future__ import annotations

__all__ = ["OPTIMADE_DATABASES", "MATBENCH_TASKS", "OC_ARCHIVES", "TARGET_ALIASES"]

# name -> OPTIMADE base URL (the providers' published endpoints; the client adds /v1)
OPTIMADE_DATABASES = {
    "oqmd": "https://oqmd.org/optimade",
    "mp": "https://optimade.materialsproject.org",
    "nomad": "https://nomad-lab.eu/prod/v1/optimade",
    "alexandria": "https://alexandria.icams.rub.de/pbe",
    "jarvis": "https://jarvis.nist.gov/optimade/jarvisdft",
}

# MatBench v0.1 task files: URL, sha256 and record count as matminer publishes them
# (matminer/datasets/dataset_metadata.json); read with the `matbench` reader.
MATBENCH_TASKS = {
    "matbench_mp_e_form": ("https://ml.materialsproject.org/projects/matbench_mp_e_form.json.gz",
                           "dedcb1d4ba2e3e50dbdd45ba5bc647a00e9c2bcf8f8bf556dc8e92caa39eb21f", 132752),
    "matbench_mp_gap": ("https://ml.materialsproject.org/projects/matbench_mp_gap.json.gz",
                        "58b65746bd88329986ed66031a2ac1369c7c522f7bc9f9081528e07097c2c057", 106113),
    "matbench_mp_is_metal": ("https://ml.materialsproject.org/projects/matbench_mp_is_metal.json.gz",
                             "9a028ed5750a4c76ca36e9f3c8d48fe0bf3fb21b76ec2289e58ae7048d527919", 106113),
    "matbench_perovskites": ("https://ml.materialsproject.org/projects/matbench_perovskites.json.gz",
                             "4641e2417f8ec8b50096d2230864468dfa08278dc9d257c327f65d0305278483", 18928),
    "matbench_log_kvrh": ("https://ml.materialsproject.org/projects/matbench_log_kvrh.json.gz",
                          "44b113ddb7e23aa18731a62c74afa7e5aa654199e0db5f951c8248a00955c9cd", 10987),
    "matbench_log_gvrh": ("https://ml.materialsproject.org/projects/matbench_log_gvrh.json.gz",
                          "098af941f4c663270f1fe21abf20ffad6fb85ecbfcba5786ceac03983ac29da7", 10987),
    "matbench_dielectric": ("https://ml.materialsproject.org/projects/matbench_dielectric.json.gz",
                            "83befa09bc2ec2f4b6143afc413157827a90e5e2e42c1eb507ccfa01bf26a1d6", 4764),
    "matbench_jdft2d": ("https://ml.materialsproject.org/projects/matbench_jdft2d.json.gz",
                        "26057dc4524e193e32abffb296ce819b58b6e11d1278cae329a2f97817a4eddf", 636),
    "matbench_phonons": ("https://ml.materialsproject.org/projects/matbench_phonons.json.gz",
                         "4db551f21ec5f577e6202725f10e34dfc509aa7df3a6bdaac497da7f6dbbb9b3", 1265),
}

# Open Catalyst archives: URL, MD5 and layout as the fairchem documentation publishes them
# (docs/catalysts/datasets/oc20.md, oc22.md). "s2ef": a tar of *.extxyz.xz frames (+ *.txt.xz);
# "lmdb": a tar.gz of *.lmdb files of pickled graph records (read through the restricted unpickler).
_OCP = "https://dl.fbaipublicfiles.com/opencatalystproject/data"
OC_ARCHIVES = {
    "oc20_s2ef_200k": (f"{_OCP}/s2ef_train_200K.tar", "f8d0909c2623a393148435dede7d3a46", "s2ef", "oc20"),
    "oc20_s2ef_2m": (f"{_OCP}/s2ef_train_2M.tar", "953474cb93f0b08cdc523399f03f7c36", "s2ef", "oc20"),
    "oc20_s2ef_20m": (f"{_OCP}/s2ef_train_20M.tar", "863bc983245ffc0285305a1850e19cf7", "s2ef", "oc20"),
    "oc20_s2ef_all": (f"{_OCP}/s2ef_train_all.tar", "12a7087bfd189a06ccbec9bc7add2bcd", "s2ef", "oc20"),
    "oc20_s2ef_val_id": (f"{_OCP}/s2ef_val_id.tar", "f57f7f5c1302637940f2cc858e789410", "s2ef", "oc20"),
    "oc20_s2ef_val_ood_ads": (f"{_OCP}/s2ef_val_ood_ads.tar", "431ab0d7557a4639605ba8b67793f053", "s2ef", "oc20"),
    "oc20_s2ef_val_ood_cat": (f"{_OCP}/s2ef_val_ood_cat.tar", "532d6cd1fe541a0ddb0aa0f99962b7db", "s2ef", "oc20"),
    "oc20_s2ef_val_ood_both": (f"{_OCP}/s2ef_val_ood_both.tar", "5731862978d80502bbf7017d68c2c729", "s2ef", "oc20"),
    "oc20_is2re": (f"{_OCP}/is2res_train_val_test_lmdbs.tar.gz", "cfc04dd2f87b4102ab2f607240d25fb1", "lmdb", "oc20"),
    "oc22_s2ef_total": (f"{_OCP}/oc22/s2ef_total_train_val_test_lmdbs.tar.gz", "ebea523c6f8d61248a37b4dd660b11e6",
                        "lmdb", "oc22"),
}

# our target <- the names providers give it after their `_<prefix>_`
TARGET_ALIASES = {
    "formation_energy_per_atom": ("formation_energy_per_atom", "delta_e", "formation_energy_peratom", "e_form"),
    "band_gap": ("band_gap", "bandgap", "gap"),
    "e_above_hull": ("e_above_hull", "energy_above_hull", "stability", "ehull"),
    "energy": ("energy", "total_energy", "energy_total"),
    "energy_per_atom": ("energy_per_atom",),
}
