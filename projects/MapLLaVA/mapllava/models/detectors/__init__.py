from .mapllava import MapLLaVA

__all__ = ['MapLLaVA']
