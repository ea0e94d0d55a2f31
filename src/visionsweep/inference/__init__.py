"""Prediction: trained model folders, predictors, output formats."""
