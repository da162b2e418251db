"""What ``config/`` and the apps both need, importing neither: card-number masking
(``card_data``), field encryption and keyed hashes (``crypto``), and the contract's
error codes with the problem they travel in (``error_codes``)."""
