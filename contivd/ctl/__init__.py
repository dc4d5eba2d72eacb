"""contivctl: the operator's tool that writes intent into etcd."""
