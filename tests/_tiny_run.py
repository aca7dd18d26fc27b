"""A tiny `midre run` config (YAML text) shared by the bad-input catalogs."""
TINY_RUN_YAML = """
name: tiny
seed: 0
device: cpu
dataset: {name: synthetic, resolution: 16, options: {num_private: 4, num_public: 4, images_per_id: 4}}
eval_model: {arch: tinycnn, train: {epochs: 1, batch_size: 8}}
defaults: {arch: tinycnn, train: {epochs: 1, batch_size: 8}}
targets: [{name: nodef, defense: nodef}]
attacks: [{name: gmi, preset: quick, params: {iterations: 2}, identities: "0-1", repeats: 1}]
priors: {preset: quick, params: {gan: {iterations: 2, batch_size: 8}}}
metrics: {fid: none, n_boot: 10}
report: {enabled: false}
"""
