"""What the commands do: read inputs, run models, call the algorithms, write outputs."""
