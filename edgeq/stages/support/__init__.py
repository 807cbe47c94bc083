"""stages/support"""
