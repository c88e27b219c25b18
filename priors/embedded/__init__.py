"""The embedded trained prior: small text-conditional diffusers UNets trained on procedural renders.

* :mod:`priors.embedded.dataset` -- the procedural training set (primitives x colors x views, captions).
* :mod:`priors.embedded.models` -- the pixel-space and latent-space UNet / VAE configurations.
* :mod:`priors.embedded.judge` -- shape (silhouette IoU) and color (hue) judges of generated images.
* :mod:`priors.embedded.train` -- the seeded, resumable training script that writes a
  ``save_pretrained`` folder (``python -m priors.embedded.train --variant pixel --out DIR``).
"""
