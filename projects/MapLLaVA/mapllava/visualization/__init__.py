"""Pictures of map predictions: drawing functions and the test-time hook."""
from .drawing import project_polyline, render_bev, render_camera, render_cameras
from .map_visualization_hook import MapVisualizationHook

__all__ = ['MapVisualizationHook', 'render_bev', 'render_camera', 'render_cameras',
           'project_polyline']
