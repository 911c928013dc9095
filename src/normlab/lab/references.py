"""The works the lab's claims come from, as the report's references section cites them.

:data:`PAPERS` are the papers (authors, year, title, venue, link); :data:`ARTICLES` are
the five tutorial articles the project started from, named by their titles and
described by what they show (several have no author or date on the page). A claim's
``source`` names them the same way.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Reference", "PAPERS", "ARTICLES"]


class Reference(NamedTuple):
    authors: str
    year: str
    title: str
    venue: str
    link: str = ""

    def text(self) -> str:
        """The citation as one line of plain text."""
        parts = [f"{self.authors} ({self.year})." if self.authors else "", f"{self.title}.", f"{self.venue}." if self.venue else ""]
        return " ".join(p for p in parts if p) + (f" {self.link}" if self.link else "")


PAPERS = (
    Reference("Ioffe, S., & Szegedy, C.", "2015", "Batch Normalization: Accelerating Deep Network Training by Reducing "
              "Internal Covariate Shift", "ICML 2015", "https://arxiv.org/abs/1502.03167"),
    Reference("Bjorck, J., Gomes, C., Selman, B., & Weinberger, K. Q.", "2018", "Understanding Batch Normalization",
              "NeurIPS 2018", "https://arxiv.org/abs/1806.02375"),
    Reference("Ioffe, S.", "2017", "Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized Models",
              "NeurIPS 2017", "https://arxiv.org/abs/1702.03275"),
    Reference("Hoffer, E., Hubara, I., & Soudry, D.", "2017", "Train longer, generalize better: closing the generalization "
              "gap in large batch training of neural networks", "NeurIPS 2017", "https://arxiv.org/abs/1705.08741"),
    Reference("Wu, Y., & He, K.", "2018", "Group Normalization", "ECCV 2018", "https://arxiv.org/abs/1803.08494"),
    Reference("Santurkar, S., Tsipras, D., Ilyas, A., & Madry, A.", "2018", "How Does Batch Normalization Help Optimization?",
              "NeurIPS 2018", "https://arxiv.org/abs/1805.11604"),
    Reference("Cooijmans, T., Ballas, N., Laurent, C., Gülçehre, Ç., & Courville, A.", "2016", "Recurrent Batch Normalization",
              "ICLR 2017", "https://arxiv.org/abs/1603.09025"),
    Reference("Ba, J. L., Kiros, J. R., & Hinton, G. E.", "2016", "Layer Normalization", "arXiv:1607.06450",
              "https://arxiv.org/abs/1607.06450"),
    Reference("Frankle, J., Schwab, D. J., & Morcos, A. S.", "2020", "Training BatchNorm and Only BatchNorm: On the "
              "Expressive Power of Random Features in CNNs", "ICLR 2021", "https://arxiv.org/abs/2003.00152"),
    Reference("Li, Y., Wang, N., Shi, J., Liu, J., & Hou, X.", "2016", "Revisiting Batch Normalization For Practical "
              "Domain Adaptation", "ICLR 2017 workshop", "https://arxiv.org/abs/1603.04779"),
    Reference("Greydanus, S.", "2020", "Scaling down Deep Learning (the MNIST-1D dataset)", "arXiv:2011.14439",
              "https://arxiv.org/abs/2011.14439"),
)

ARTICLES = (
    Reference("", "", '"Batch Normalization", a 3-minute-read tutorial', "On internal covariate shift, with a Keras dense "
              "network for digit classification with and without batch normalization; at inference, frozen running averages"),
    Reference("", "", '"Batch Normalization in Deep Learning", a long overview', "On the benefits (stability, speed, less "
              "sensitivity to initialization), the inference overhead, learning-rate tuning, batch dependence and "
              "recurrent networks"),
    Reference("", "", 'A "Deep Learning" revision note on batch normalization', "On internal covariate shift, the "
              "training-set statistics used at inference, and where to place the layer (before or after the activation, "
              "after F. Chollet's advice for Keras)"),
    Reference("Saxena, S.", "2021", '"Introduction to Batch Normalization"', "Analytics Vidhya: the normalization "
              "step by step and the advantages it offers"),
    Reference("", "", "A blog post reviewing Ioffe and Szegedy's batch normalization", "Trains a Keras CNN on CIFAR-100 with "
              "sigmoid or ReLU activations, with and without batch normalization"),
)
