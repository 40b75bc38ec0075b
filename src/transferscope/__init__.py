"""transferscope: what is being transferred in transfer learning?

Every analysis of Neyshabur, Sedghi & Zhang, "What is being transferred in transfer
learning?" (NeurIPS 2020), as plain functions on any ``torch.nn.Module``, plus a study
runner and a report.
"""

__version__ = "0.1.0"
