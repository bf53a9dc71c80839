from sb3_m3po.m3po.m3po import M3PO
from sb3_m3po.m3po.policies import M3POPolicy

MlpPolicy = M3POPolicy
MultiInputPolicy = M3POPolicy

__all__ = ["M3PO", "M3POPolicy", "MlpPolicy", "MultiInputPolicy"]
