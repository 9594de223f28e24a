"""Vision-language-action specifics: action/proprio normalisation and the RLDS data pipeline."""
