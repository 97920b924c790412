from .sklearn_digits import DIGITS_CLASSES, SklearnDigits, digits_split_indices

__all__ = ['DIGITS_CLASSES', 'SklearnDigits', 'digits_split_indices']
