"""The distributed runtime, in three parts: the network stack (net/), one node process (node/)
and starting runs on one or several hosts (launch/). Imports go net <- node <- launch."""
