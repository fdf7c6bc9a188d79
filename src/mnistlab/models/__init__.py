"""Model builders: MLP (digits), spatial transformer + plain CNN (STN studies), backbones."""
